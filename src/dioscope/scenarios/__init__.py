"""Scenario files: the format (``format``) and their deterministic bytes (``content``).

Harness code: the model never imports this package.
"""

from dioscope.scenarios.format import (
    PROFILES,
    DeviceSpec,
    Expect,
    FileSpec,
    IovSeg,
    Scenario,
    ScenarioError,
    Step,
    find_scenarios,
    load_scenario,
    load_scenarios,
    loads_scenario,
)

__all__ = [
    "PROFILES",
    "DeviceSpec",
    "Expect",
    "FileSpec",
    "IovSeg",
    "Scenario",
    "ScenarioError",
    "Step",
    "find_scenarios",
    "load_scenario",
    "load_scenarios",
    "loads_scenario",
]
