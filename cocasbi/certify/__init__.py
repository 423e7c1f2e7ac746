"""Certification: is a fast configuration (COCA, COLA, few-step PM) as good as a reference?

Paired runs from the same initial conditions over a design of θ in the prior
(:mod:`~cocasbi.certify.pairs`), field-level metrics per k bin against thresholds, a
convergence ladder with the forces needed to pass (:mod:`~cocasbi.certify.convergence`), a
Fisher estimate of the parameter bias (:mod:`~cocasbi.certify.fisher`), an optional NPE check
with an MMD misspecification test (:mod:`~cocasbi.certify.npe`,
:mod:`~cocasbi.certify.misspecification`), and a JSON / Markdown / PNG report
(:mod:`~cocasbi.certify.report`). Entry points: :func:`certify` and ``cocasbi certify``.
"""

from cocasbi.certify.config import (
    CertifyConfig,
    ConvergenceSpec,
    DesignSpec,
    FisherSpec,
    MetricsSpec,
    RunSpec,
    Thresholds,
    certify_config_from_dict,
    load_certify_config,
)
from cocasbi.certify.convergence import forces_to_pass
from cocasbi.certify.fisher import finite_difference_jacobian, fisher_bias, hartlap_precision
from cocasbi.certify.pairs import PairTask, make_models, run_pairs
from cocasbi.certify.report import (
    EXIT_ERROR,
    EXIT_FAIL,
    EXIT_PASS,
    CertificationReport,
    Check,
    plot_report,
)
from cocasbi.certify.run import (
    certification_seeds,
    certify,
    convergence_ladder,
    design,
    write_report,
)

__all__ = [
    "EXIT_ERROR", "EXIT_FAIL", "EXIT_PASS", "CertificationReport", "CertifyConfig", "Check",
    "ConvergenceSpec", "DesignSpec", "FisherSpec", "MetricsSpec", "PairTask", "RunSpec",
    "Thresholds", "certification_seeds", "certify", "certify_config_from_dict",
    "convergence_ladder", "design", "forces_to_pass",
    "finite_difference_jacobian", "fisher_bias", "hartlap_precision", "load_certify_config",
    "make_models", "plot_report", "run_pairs", "write_report",
]
