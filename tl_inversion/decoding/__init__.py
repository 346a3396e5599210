"""Decoders: the generative model of inputs conditioned on an activation (paper section 3).

Modules: :mod:`.decoder` (one decoder: config, module, KV-cached batched generation),
:mod:`.bank` (one decoder per site, or one shared site-conditioned decoder, saved with the
probed model's fingerprint), :mod:`.stacking` (same-shaped decoders run as one batched module).
"""
