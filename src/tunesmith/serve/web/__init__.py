"""The web page ``tunesmith serve`` serves at ``/``: jobs, new job, models, playground and review (serve.web.site)."""
