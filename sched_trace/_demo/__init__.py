"""The program ``sched-trace demo`` runs: an ordinary pipeline-parallel training job."""
