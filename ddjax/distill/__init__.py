"""Dataset distillation methods: synthetic-set parameterisations, MKDT (trajectory matching) and
LGM (linear gradient matching on a frozen backbone)."""
