"""Evaluation of distilled sets: linear probes on frozen backbones, baselines, cross-model
tables."""
