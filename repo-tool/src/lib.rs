//! `petrel-repo` library: the repository editor behind the CLI.
