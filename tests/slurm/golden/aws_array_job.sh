#!/bin/bash
#SBATCH --job-name='hp_run42_Ephys Sync'
#SBATCH --partition=cpu-large
#SBATCH --output=/home/u/.local/share/hpcpipe/runs/run42/logs/%x_%A_%a.out
#SBATCH --error=/home/u/.local/share/hpcpipe/runs/run42/logs/%x_%A_%a.err
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=4
#SBATCH --mem=7680M
#SBATCH --gres=gpu:1
#SBATCH --time=01:30:00
#SBATCH --nice=100
#SBATCH --licenses=io:20
#SBATCH --array=0-3,7,9-10%50
#SBATCH --dependency=afterok:1001:1002_3,aftercorr:1000
#SBATCH --kill-on-invalid-dep=yes
#
# Rendered by hpcpipe (profile: aws). Submit with `sbatch --parsable <this file>`.
# Every value from a session path, task name or argument below is shell-quoted;
# the setup lines and the scratch directory come verbatim from the site profile.
set -eo pipefail

export HPCPIPE_SLURM_PROFILE=aws
export HPCPIPE_LOCATION=AWS
export HPCPIPE_SCRATCH=/scratch/$SLURM_JOB_ID
export HPCPIPE_RUN=run42
export HPCPIPE_STORE='/home/u/store dir/tasks.sqlite'

# ---- site setup (profile "aws")
source /opt/iblenv/bin/activate

# ---- the task; exec: SLURM's SIGTERM/SIGUSR2 go to Python itself, not to a waiting shell
exec \
python -m hpcpipe.jobside --run run42 --task EphysSync --session '/data/lab/Subjects/KS 022/2024-05-01/001'
