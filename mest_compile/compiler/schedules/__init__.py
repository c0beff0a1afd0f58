"""Hand-written schedules per scheme x target family."""
