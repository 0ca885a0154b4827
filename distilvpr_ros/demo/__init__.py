"""The main job on the embedded synthetic world: what ``make demo`` / ``distilvpr demo`` runs.

One command chains the whole pipeline (world, teacher, student, ONNX export, map and localization through the
ROS 2 nodes, offline evaluation, Corridor, report); every setting is in ``config/demo.yaml`` (section ``quick``
with ``--quick``, else ``default``). The package, one concept per module:

- :mod:`.settings`  the typed settings and where the shipped ``config/demo.yaml`` is found
- :mod:`.stage`     stages as data (:class:`Stage`) and the keyed build-or-reuse of one (:class:`Demo`)
- :mod:`.world`     the synthetic world under the data root and its ground-truth summary
- :mod:`.stages`    the chain: :data:`STAGES`
- :mod:`.plots`     the figures of the localization replay
- :mod:`.report`    ``report.md`` and ``summary.json`` (:func:`write_demo_report`)
- :mod:`.runner`    :func:`run_demo`: the stages in order, then the report

Resume: stage ``S`` works in ``<results>/demo/work_<quick|default>/S/`` and records in ``S/stage.json`` a
hash of its inputs; a later run reuses a stage whose inputs and outputs are unchanged, re-runs it otherwise
(and every stage downstream of it); ``fresh=True`` re-runs all.
"""

from .runner import console_summary, run_demo
from .settings import DemoSettings, default_demo_config, load_demo_settings
from .stage import STAGE_FILE, Demo, DemoError, Stage
from .stages import STAGES

__all__ = ["STAGES", "STAGE_FILE", "Demo", "DemoError", "DemoSettings", "Stage", "console_summary",
           "default_demo_config", "load_demo_settings", "run_demo"]
