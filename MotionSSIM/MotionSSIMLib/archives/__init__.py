"""Archives: folders and BIDS datasets assessed scan by scan, and the group report.

Holds: discovery (the scans found and their keys), manifest (shards, fingerprints, resume,
the per-shard manifests), archive (the run: read ahead, assess, write), group_report (the
shards merged into one table), group_files (its CSV and HTML), ratings (expert ratings and
the agreement with them).

May import: base, imaging, assessment.
"""
