"""PatHME as a MONAI Deploy application.

    python -m pathme.deploy.app -i <slide or folder of slides> -o <output folder> -m <model folder>

Operators: slide loader -> feature extraction -> PatHME tokens -> MIL -> report writer. Each passes one
:class:`~pathme.deploy.pipeline.Case` downstream and runs one step of :mod:`pathme.deploy.pipeline`, so the
application computes exactly what the bundles compute. Intermediate stores go to ``<output>/work`` (or
``--workdir``); a rerun reuses the valid ones.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from pathme.gpu_libraries import cuda_driver_present, import_image_codecs_quietly

import_image_codecs_quietly()  # before MONAI Deploy imports nvImageCodec: no no-driver lines on a CPU machine
# Holoscan's own log (its graph's info lines; on a CPU machine its CUDA warnings): errors only without a driver
os.environ.setdefault("HOLOSCAN_LOG_LEVEL", "WARN" if cuda_driver_present() else "ERROR")

from monai.deploy.conditions import CountCondition  # noqa: E402
from monai.deploy.core import Application, Fragment, Operator, OperatorSpec  # noqa: E402
from monai.deploy.core.app_context import AppContext  # noqa: E402
from monai.deploy.core.arg_parser import parse_args  # noqa: E402

from pathme.console import console_logging  # noqa: E402
from pathme.deploy.app_models import AppModels  # noqa: E402
from pathme.deploy.pipeline import (  # noqa: E402
    Case,
    compute_tokens,
    extract_features,
    find_slides,
    predict,
    write_reports,
)


class _NoNamedModelNotice(logging.Filter):
    """Drops MONAI Deploy's notice that the model folder "is not treated as NamedModel": its app context inspects the
    model path for the SDK's own model kinds (TorchScript, Triton, a folder of one file per model), which pathme's
    model folder, a MONAI bundle the app loads itself (:class:`AppModels`), is none of."""

    def filter(self, record: logging.LogRecord) -> bool:
        """False for that notice."""
        return "not treated as NamedModel" not in record.getMessage()


logging.getLogger("monai.deploy.core.models.named_model").addFilter(_NoNamedModelNotice())


class SlideLoaderOperator(Operator):
    """Finds the slides of the input path and starts the case."""

    def __init__(self, fragment: Fragment, *args, input_path: Path, work: Path, **kwargs) -> None:
        self.input_path, self.work = input_path, work
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the operator's one output port, ``case``."""
        spec.output("case")

    def compute(self, op_input, op_output, context) -> None:
        """Emit the case: every slide found under the input path (a study's series split in the work folder), with
        the work folder."""
        op_output.emit(Case(find_slides(self.input_path, self.work), self.work), "case")


class _StepOperator(Operator):
    """Receives the case, runs one pipeline step with the models, emits the case."""

    step: Callable[[Case, AppModels], Case]

    def __init__(self, fragment: Fragment, *args, models: AppModels, **kwargs) -> None:
        self.models = models
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        spec.input("case")
        spec.output("case")

    def compute(self, op_input, op_output, context) -> None:
        op_output.emit(type(self).step(op_input.receive("case"), self.models), "case")


class FeatureExtractionOperator(_StepOperator):
    """Region stores of every expert (bundle pathme_feature_extraction)."""

    step = staticmethod(extract_features)


class TokenOperator(_StepOperator):
    """PatHME region tokens from the distilled teacher (bundle pathme_distillation, inference)."""

    step = staticmethod(compute_tokens)


class MILOperator(_StepOperator):
    """Every task's fold-model ensemble with attention heatmaps (bundle pathme_mil, inference)."""

    step = staticmethod(predict)


class ReportWriterOperator(Operator):
    """``<output>/<slide id>/report.json`` with the heatmaps beside it."""

    def __init__(self, fragment: Fragment, *args, models: AppModels, output_dir: Path, **kwargs) -> None:
        self.models, self.output_dir = models, output_dir
        super().__init__(fragment, *args, **kwargs)

    def setup(self, spec: OperatorSpec) -> None:
        """Declare the operator's one input port, ``case``."""
        spec.input("case")

    def compute(self, op_input, op_output, context) -> None:
        """Write the JSON report and heatmaps of every slide of the received case into the output folder."""
        write_reports(op_input.receive("case"), self.models, self.output_dir)


class PatHMEApp(Application):
    """Slides in; per slide a JSON report (predictions, risk, model versions) and attention heatmaps out."""

    def compose(self) -> None:
        """Load the models of the app context's model path and chain loader -> pipeline steps -> report writer."""
        context = app_context(self.argv)
        models = AppModels.load(context.model_path)
        output = Path(context.output_path)
        work = Path(context.workdir) if context.workdir else output / "work"
        loader = SlideLoaderOperator(
            self, CountCondition(self, 1), input_path=Path(context.input_path), work=work, name="slide_loader"
        )
        extractor = FeatureExtractionOperator(self, models=models, name="feature_extraction")
        tokens = TokenOperator(self, models=models, name="pathme_tokens")
        mil = MILOperator(self, models=models, name="mil")
        writer = ReportWriterOperator(self, models=models, output_dir=output, name="report_writer")
        for upstream, downstream in ((loader, extractor), (extractor, tokens), (tokens, mil), (mil, writer)):
            self.add_flow(upstream, downstream, {("case", "case")})


def app_context(argv: list[str]) -> AppContext:
    """MONAI Deploy's app context of ``argv`` (``-i``, ``-o``, ``-m``, ``-w`` over its environment variables), as
    ``Application.init_app_context`` makes it but without its logging set-up: pathme's is in place instead."""
    return AppContext({key: value for key, value in vars(parse_args(argv)).items() if value})


def main() -> None:
    """Run the app on the process's arguments as quietly as the ``pathme`` command: a line per stage,
    warnings and errors on the console, the full log in ``<output>/pathme.log`` (:mod:`pathme.console`).
    ``-h``/``--help`` prints the app's own options (MONAI Deploy's ``-i``, ``-o``, ``-m``, ``-w``), which
    Holoscan's help, printed otherwise, leaves out."""
    argv = sys.argv
    if any(arg in ("-h", "--help") for arg in argv[1:]):
        print("\n\n".join(__doc__.split("\n\n")[:2]) + "\n")
        parse_args([argv[0], "--help"])  # argparse prints the options and exits
    with console_logging(Path(app_context(argv).output_path)):
        PatHMEApp().run()


if __name__ == "__main__":
    main()
