"""Scale-out: a build's runs as Ray tasks with one store as the result (``fipgraph build --executor ray``)."""
