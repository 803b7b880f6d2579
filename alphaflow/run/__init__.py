"""The run folder: its format (``folder``), which checkpoint and weights a command reads
(``checkpoints``), atomic and checked files (``files``), the lock that keeps one
writer per folder (``lock``), the images it holds (``images``) and the errors that end a command (``errors``)."""
