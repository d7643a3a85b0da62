"""Job-script templates and site profiles for the SLURM backend (data only).

Installed as ``hpcpipe.slurm_templates`` (see pyproject's package-dir); read through
``hpcpipe.slurm.profiles``, which also finds this folder in a source checkout.
"""
