"""Drop-ins for code that already trains with ``transformers.Trainer``.

Cross-tuned AD-DROP in a run_glue-style script is a one-line change::

    trainer = Trainer(model=model, args=args, ...)          # before
    trainer = ADDropTrainer(model=model, args=args, ...)    # after (optionally addrop=ADDropConfig(...))
"""

from __future__ import annotations

from transformers import Trainer

from addrop_cli.core.regularizer import ADDrop
from addrop_cli.core.settings import ADDropConfig, epoch_phase


class ADDropTrainer(Trainer):
    """``transformers.Trainer`` whose training loss follows the cross-tuning schedule (Algorithm 1).

    Odd epochs compute the usual loss; even epochs the loss of the AD-DROP masked forward. Evaluation and
    prediction are untouched. Extra keyword argument: ``addrop`` (an :class:`ADDropConfig`, default settings
    when omitted).
    """

    def __init__(self, *args, addrop: ADDropConfig | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.addrop_config = addrop or ADDropConfig()
        self._addrop: ADDrop | None = None

    def current_phase(self) -> str:
        # state.epoch is fractional progress (1.5 = halfway through the 2nd epoch); phases count from 1.
        return epoch_phase(int(self.state.epoch or 0) + 1, self.addrop_config)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs or not model.training or self.current_phase() != "addrop":
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        if self._addrop is None or self._addrop.model is not model:
            self._addrop = ADDrop(model, self.addrop_config)
        return self._addrop.loss(inputs)
