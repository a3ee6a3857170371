"""The quick start's tasks: any module in the project directory works the same way."""

from nuvom_kernel import task


@task(retries=2, retry_delay_secs=1, timeout_secs=5, store_result=True)
def add(x: int, y: int) -> int:
    """Add two numbers."""
    return x + y
