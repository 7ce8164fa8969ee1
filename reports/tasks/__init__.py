"""Report parts of task kinds, named by each task's ``TaskInfo.report``: the tables, figures and
Markdown that follow from what the task predicts (for classification: per-class scores and
confusion matrices). Called by the skeleton (``ferbench.reports.build_report``) with a
``ferbench.reports.context.ReportContext``."""
