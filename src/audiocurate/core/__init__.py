"""What every stage, filter and backend is built on: the stage base class and the registries."""
