"""Herald's HTTP API: thin routes over store/ and the Temporal client."""
