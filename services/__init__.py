"""flowplan's services. None imports another: they meet only in proto/ and on the wire."""
