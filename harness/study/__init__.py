"""Studies beyond the leaderboard: what a protocol choice costs (`harness study leakage`)."""
