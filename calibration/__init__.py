"""Reference IMRT plans made with pyRadPlan, stored for calibrating rtplan's dose model.

Not part of the runtime package: see ``calibration/README.md``. Only
:mod:`calibration.engine` imports pyRadPlan; the plan list (:mod:`calibration.plans`),
the scoring (:mod:`calibration.scoring`) and the store (:mod:`calibration.store`) need
rtplan alone, so the store can be read and tested without pyRadPlan.
"""
