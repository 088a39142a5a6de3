"""SENSORIUM recordings: read, write, validate, summarize; and the simulated mouse that writes them."""

from twin.data.heldout import (
    HeldOut,
    find_held_out,
    load_held_out,
    responses_with_held_out,
    restore,
    write_held_out,
)
from twin.data.presets import PRESETS, Preset, RecordingSpec, get_preset
from twin.data.reader import load_recording
from twin.data.recording import BEHAVIOR_NAMES, HELD_OUT_TIERS, TIERS, Recording, data_key_from_name
from twin.data.simulation import GroundTruth, simulate
from twin.data.summary import format_summary, summarize
from twin.data.writer import compute_statistics, folder_name, write_recording

__all__ = [
    "BEHAVIOR_NAMES",
    "HELD_OUT_TIERS",
    "PRESETS",
    "TIERS",
    "GroundTruth",
    "HeldOut",
    "Preset",
    "Recording",
    "RecordingSpec",
    "compute_statistics",
    "data_key_from_name",
    "find_held_out",
    "folder_name",
    "format_summary",
    "get_preset",
    "load_held_out",
    "load_recording",
    "responses_with_held_out",
    "restore",
    "simulate",
    "summarize",
    "write_held_out",
    "write_recording",
]
