#!/bin/bash
#SBATCH --job-name=hp-run
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --mem=4G
#SBATCH --gres=gpu:1
#
# Rendered by hpcpipe (profile: site). Submit with `sbatch --parsable <this file>`.
# Every value from a session path, task name or argument below is shell-quoted;
# the setup lines and the scratch directory come verbatim from the site profile.
set -eo pipefail

export HPCPIPE_SLURM_PROFILE=site
export HPCPIPE_LOCATION=server
export HPCPIPE_SCRATCH=/scratch/$USER/job_$SLURM_JOB_ID
export HPCPIPE_BINDS=/data/lab/Subjects,/runs/hp-run"${HPCPIPE_SCRATCH:+,$HPCPIPE_SCRATCH}"

# ---- site setup (profile "site")
module load apptainer
export KS_THREADS=$SLURM_CPUS_PER_TASK

# ---- the task; exec: SLURM's SIGTERM/SIGUSR2 go to Python itself, not to a waiting shell
exec \
apptainer exec --nv --bind="$HPCPIPE_BINDS" /images/kilosort.sif /env/bin/python -m hpcpipe.jobside --run-dir /runs/hp-run
