"""The synthetic multi-task world used to train and measure every task on one machine."""
