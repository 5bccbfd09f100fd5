"""Ignite engines: the distillation trainer with its EMA teacher, schedules and handlers."""
