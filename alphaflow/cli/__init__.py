"""The command line, ``alphaflow <command>`` (``main``); each command's module is imported only when it runs,
so ``alphaflow --help`` starts without torch."""
