"""Balancing methods: one module per method, each registering itself in METHODS."""
from bbench.methods import (  # noqa: F401  (each import registers a method)
    agm, amco, baseline, cml, gblending, greedy, lfm, linear_probe, mbsd, mla, mmcosine, mmpareto,
    modality_valuation, ogm, opm, pmr, reconboost, relearning, umt, unimodal)
from bbench.methods.base import ForwardOut, Method, StepInfo, StepOutput, WindowParams
from bbench.methods.registry import METHODS, build_method, register_method

__all__ = ["ForwardOut", "METHODS", "Method", "StepInfo", "StepOutput", "WindowParams",
           "build_method", "register_method"]
