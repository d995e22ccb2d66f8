"""KTO on the synthetic sentiment task: its pairs split into unpaired records.

  python -m train.main --config configs/kto.py --workdir /tmp/kto

The default run's task, model and SFT reference (configs/default.py), with
each of its preference pairs given to KTO as two unpaired records: the
chosen response labelled desirable, the rejected one undesirable (as TRL's
``unpair_preference_dataset`` splits them). A batch holds 32 records; the
reference point is estimated from each record's prompt paired with the
completion of the record before it in the batch.

Held-out ``eval/rewards/accuracies`` is the pair accuracy of the held-out
pairs (split the same way; a pair counts when both its records share an
evaluation batch, which they do in its source order): the share whose
chosen response the implicit reward beta log pi/pi_ref ranks above the
rejected one.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.loss.name = "kto"
  config.loss.beta = 0.1
  config.loss.desirable_weight = 1.0
  config.loss.undesirable_weight = 1.0
  return config
