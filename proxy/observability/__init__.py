"""What the gateway tells its operators: `logs` (structlog JSON lines, batched per
event-loop iteration)."""
