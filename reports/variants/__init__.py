"""Report sections of training variants, named by each variant's ``VariantInfo.report_section``.

They live in the report layer (they use its tables, figures and Markdown helpers), which depends on
``ferbench.harness`` and never the reverse; the skeleton (``ferbench.reports.build_report``) calls
the section of every variant the grid uses with a ``ferbench.reports.context.ReportContext``.
"""
