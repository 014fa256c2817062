"""What each route does, once it has parsed and authorised the request."""
