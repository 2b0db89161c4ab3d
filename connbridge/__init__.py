"""connbridge: speak Python's multiprocessing.connection protocol on asyncio."""
