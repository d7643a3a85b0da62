"""hpcpipe: run session pipelines of ibllib-style Tasks on SLURM, reporting to Alyx."""
__version__ = "0.1.0"
