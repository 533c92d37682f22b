"""Drop-ins for code that already trains with ``transformers.Trainer``.

Cross-tuned AD-DROP in a run_glue-style script is a one-line change::

    trainer = Trainer(model=model, args=args, ...)          # before
    trainer = ADDropTrainer(model=model, args=args, ...)    # after (optionally addrop=ADDropConfig(...))
"""

from __future__ import annotations

import inspect

from transformers import Trainer

from addrop_cli.core.methods.base import Regularizer
from addrop_cli.core.methods.registry import make_regularizer, method_spec
from addrop_cli.core.settings import FT_PHASE, ADDropConfig, epoch_phase
from addrop_cli.recipe import method_sections

TRAINER_ARGUMENTS = frozenset(inspect.signature(Trainer.__init__).parameters)


class ADDropTrainer(Trainer):
    """``transformers.Trainer`` whose training loss follows the cross-tuning schedule (Algorithm 1).

    Odd epochs compute the usual loss; even epochs the loss of the AD-DROP masked forward (or of another method of
    the method table with ``ADDropConfig(method="rdrop")``, ``"hiddencut"`` or a plugin's name). Evaluation and
    prediction are untouched. Extra keyword arguments: ``addrop`` (an :class:`ADDropConfig`, default settings
    when omitted), and each method's settings under its recipe section's name (``rdrop=RDropConfig(...)``,
    ``hiddencut=HiddenCutConfig(...)``; defaults when omitted).
    """

    def __init__(self, *args, addrop: ADDropConfig | None = None, **kwargs):
        # A section named like one of Trainer's own arguments stays Trainer's (its method runs at its defaults).
        sections = set(method_sections()) - TRAINER_ARGUMENTS
        self.method_settings = {name: kwargs.pop(name) for name in sections if name in kwargs}
        super().__init__(*args, **kwargs)
        self.addrop_config = addrop or ADDropConfig()
        self.method = method_spec(self.addrop_config.method)  # an unknown method fails here, not mid-training
        self._addrop: Regularizer | None = None
        self._addrop_model = None

    def current_phase(self) -> str:
        # state.epoch is fractional progress (1.5 = halfway through the 2nd epoch); phases count from 1.
        return epoch_phase(int(self.state.epoch or 0) + 1, self.addrop_config)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not model.training or self.current_phase() == FT_PHASE:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if self._addrop is None or self._addrop_model is not model:
            special_ids = getattr(self.processing_class, "all_special_ids", None)
            settings = self.method_settings.get(self.method.recipe_section)
            self._addrop = make_regularizer(model, self.addrop_config, settings=settings, special_ids=special_ids)
            self._addrop_model = model
        return self._addrop.loss(inputs)
