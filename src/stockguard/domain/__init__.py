"""Pure rules of stock: states, transitions, location choice, errors. Imports nothing
from the database, the cache or the web."""
