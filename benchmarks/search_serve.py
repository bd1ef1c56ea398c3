"""The search server over a benchmark index (the index stores its text tower, as `index` writes it)."""
import sys

import uvicorn

from lightning_frozen.search import Index
from lightning_frozen.search.query import query_threads
from lightning_frozen.search.server import create_app

if __name__ == "__main__":
    folder, port = sys.argv[1], int(sys.argv[2])
    query_threads()
    uvicorn.run(create_app(Index(folder)), host="127.0.0.1", port=port, log_level="warning")
