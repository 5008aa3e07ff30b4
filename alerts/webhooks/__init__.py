"""Webhooks: subscriptions and signing (``registry``), the admin API (``api``) and the router that posts
alerts to subscribers (``router``)."""
