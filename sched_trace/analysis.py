"""Pipeline analysis: busy and idle time, bubble ratio, stage latency statistics."""

from __future__ import annotations
