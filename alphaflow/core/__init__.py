"""The mathematics every layer shares: time conventions, α-schedules, timestep samplers, the JVP, mixed
precision, the few-step samplers and the conflict rules (docs/architecture.md). Imports nothing above torch."""
