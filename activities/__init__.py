"""Everything with side effects that a workflow asks for, thin over store/ and providers/."""
