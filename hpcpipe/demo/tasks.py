"""The demo pipeline's tasks: real numpy work on a synthetic session (see ``demo.session``).

raw ephys ─┬─> DemoSpikeSorting (asks for a GPU) ──────────────┐
raw sync ──┴─> DemoSync ─> DemoTrials ─> DemoBehaviourQC ───────┴─> DemoSummary
"""
from __future__ import annotations

import json
import logging

import numpy as np

from ..task import Task

_logger = logging.getLogger(__name__)
RAW = "raw_demo_data"


class DemoTask(Task):
    """Small resources that fit any test partition; fails on purpose when a marker says so."""

    cpu = 1
    ram = 1
    time_out_secs = 600
    job_size = "small"

    def _check_fail_marker(self) -> None:
        if (self.session_path / f"_demo_fail_{self.name}").exists():
            raise RuntimeError(f"{self.name}: failure requested by marker file _demo_fail_{self.name}")


class DemoSync(DemoTask):
    """Extract the sync pulse fronts (rising edges) from the raw sync channel."""

    priority = 90
    signature = {"input_files": [("_demo_raw.sync.npy", RAW, True), ("_demo_raw.meta.json", RAW, True)],
                 "output_files": [("_demo_sync.times.npy", "alf", True)]}

    def _run(self, overwrite=False):
        self._check_fail_marker()
        fs = json.loads((self.session_path / RAW / "_demo_raw.meta.json").read_text())["fs"]
        sync = np.load(self.session_path / RAW / "_demo_raw.sync.npy")
        fronts = np.flatnonzero(np.diff(sync.astype(np.int16)) > 0) + 1
        out = self.session_path / "alf" / "_demo_sync.times.npy"
        out.parent.mkdir(exist_ok=True)
        np.save(out, fronts / fs)
        _logger.info("%d sync fronts", fronts.size)
        return [out]


class DemoSpikeSorting(DemoTask):
    """Threshold spike detection per channel; asks for a GPU and runs on the CPU without one."""

    gpu = 1
    priority = 60
    signature = {"input_files": [("_demo_raw.ephys.npy", RAW, True), ("_demo_raw.meta.json", RAW, True)],
                 "output_files": [("spikes.times.npy", "alf", True), ("spikes.clusters.npy", "alf", True),
                                  ("clusters.metrics.csv", "alf", False)]}

    def _run(self, overwrite=False):
        self._check_fail_marker()
        fs = json.loads((self.session_path / RAW / "_demo_raw.meta.json").read_text())["fs"]
        ephys = np.load(self.session_path / RAW / "_demo_raw.ephys.npy", mmap_mode="r")
        times, clusters = [], []
        for ch in range(ephys.shape[0]):
            x = np.asarray(ephys[ch])
            thresh = -5 * np.median(np.abs(x)) / 0.6745
            crossings = np.flatnonzero((x[1:] < thresh) & (x[:-1] >= thresh)) + 1
            times.append(crossings / fs)
            clusters.append(np.full(crossings.size, ch))
        order = np.argsort(np.concatenate(times), kind="stable")
        alf = self.session_path / "alf"
        alf.mkdir(exist_ok=True)
        files = [alf / "spikes.times.npy", alf / "spikes.clusters.npy"]
        np.save(files[0], np.concatenate(times)[order])
        np.save(files[1], np.concatenate(clusters)[order])
        _logger.info("%d spikes on %d channels", order.size, ephys.shape[0])
        return files


class DemoTrials(DemoTask):
    """Trials table: behaviour events mapped onto the ephys clock by a linear fit to the sync."""

    priority = 80
    signature = {"input_files": [("_demo_sync.times.npy", "alf", True), ("_demo_raw.behaviour.json", RAW, True)],
                 "output_files": [("trials.intervals.npy", "alf", True), ("trials.choice.npy", "alf", True)]}

    def _run(self, overwrite=False):
        self._check_fail_marker()
        fronts = np.load(self.session_path / "alf" / "_demo_sync.times.npy")
        bhv = json.loads((self.session_path / RAW / "_demo_raw.behaviour.json").read_text())
        starts = np.asarray(bhv["trial_start"])
        n = min(fronts.size, starts.size)
        slope, offset = np.polyfit(starts[:n], fronts[:n], 1)
        to_ephys = lambda x: slope * np.asarray(x) + offset  # noqa: E731
        intervals = np.c_[to_ephys(starts), to_ephys(bhv["response"])]
        files = [self.session_path / "alf" / "trials.intervals.npy", self.session_path / "alf" / "trials.choice.npy"]
        np.save(files[0], intervals)
        np.save(files[1], np.asarray(bhv["choice"]))
        _logger.info("%d trials, clock slope %.6f offset %.4f s", n, slope, offset)
        return files


class DemoBehaviourQC(DemoTask):
    """Checks on the trials: positive durations, monotonic starts, fit residual."""

    priority = 50
    signature = {"input_files": [("trials.intervals.npy", "alf", True), ("_demo_sync.times.npy", "alf", True)],
                 "output_files": [("_demo_qc.metrics.json", "alf", True)]}

    def _run(self, overwrite=False):
        self._check_fail_marker()
        intervals = np.load(self.session_path / "alf" / "trials.intervals.npy")
        fronts = np.load(self.session_path / "alf" / "_demo_sync.times.npy")
        n = min(len(fronts), len(intervals))
        residual = float(np.max(np.abs(intervals[:n, 0] - fronts[:n])))
        metrics = {"n_trials": int(len(intervals)),
                   "durations_positive": bool(np.all(np.diff(intervals, axis=1) > 0)),
                   "starts_monotonic": bool(np.all(np.diff(intervals[:, 0]) > 0)),
                   "max_sync_residual_s": residual,
                   "outcome": "PASS" if residual < 0.01 else "FAIL"}
        out = self.session_path / "alf" / "_demo_qc.metrics.json"
        out.write_text(json.dumps(metrics, indent=2))
        return [out]


class DemoSummary(DemoTask):
    """Per-trial firing rate table (CSV) joining spikes and trials."""

    priority = 20
    signature = {"input_files": [("spikes.times.npy", "alf", True), ("trials.intervals.npy", "alf", True),
                                 ("_demo_qc.metrics.json", "alf", True)],
                 "output_files": [("_demo_summary.table.csv", "alf", True)]}

    def _run(self, overwrite=False):
        self._check_fail_marker()
        spikes = np.load(self.session_path / "alf" / "spikes.times.npy")
        intervals = np.load(self.session_path / "alf" / "trials.intervals.npy")
        counts = np.searchsorted(spikes, intervals[:, 1]) - np.searchsorted(spikes, intervals[:, 0])
        rates = counts / np.diff(intervals, axis=1)[:, 0]
        out = self.session_path / "alf" / "_demo_summary.table.csv"
        rows = ["trial,start,end,spike_count,rate_hz"] + [
            f"{i},{a:.4f},{b:.4f},{c},{r:.3f}" for i, ((a, b), c, r) in enumerate(zip(intervals, counts, rates))]
        out.write_text("\n".join(rows) + "\n")
        return [out]
