"""Atlas definitions shipped with rtplan (data, not code): one folder per atlas."""
