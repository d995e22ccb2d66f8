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

Measured on the shared 2-core CPU (jax 0.10.2), twice with the same values
(the run is deterministic): held-out ``eval/rewards/accuracies`` 0.730 at
step 100 and 0.777 at step 200, ``eval/rewards/chosen`` -0.68 against
``eval/rewards/rejected`` -1.31; 2 min 9 s and 2 min 23 s wall with other
jobs running (41 s and 39 s of CPU time), SFT included.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.loss.name = "kto"
  config.loss.beta = 0.1
  config.loss.desirable_weight = 1.0
  config.loss.undesirable_weight = 1.0
  return config
