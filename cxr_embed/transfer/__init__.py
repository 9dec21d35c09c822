"""The paper's transfer approaches end to end: fine-tuning and the three-way comparison."""
