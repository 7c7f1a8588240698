"""Run-directory readers, tables (Markdown, LaTeX, CSV) and figures."""
