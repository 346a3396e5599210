"""Training decoders (and the small probed models of the paper's tasks).

Activations are harvested on the fly from the probed model, optionally blurred by a noise
kernel (:mod:`.noise`), and the decoders learn to generate the input that produced them.

Modules: :mod:`.config` (:class:`~.config.TrainConfig`), :mod:`.schedule` (learning rate),
:mod:`.checkpoint` (run state, atomic checkpoints, resume checks, warm starts),
:mod:`.trainer` (:func:`~.trainer.train`), :mod:`.noise` (noise kernels), :mod:`.probed`
(training the small probed models).
"""
