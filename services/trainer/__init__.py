"""The trainer service: training and hyperparameter-search jobs run by Dramatiq workers."""
