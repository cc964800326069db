from __future__ import annotations

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

from engine.web.django import engine
from examples.common import PAGE


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(PAGE)


def ruleset(request: HttpRequest) -> JsonResponse:
    """The app's own views use the same engine."""
    return JsonResponse({"version": engine().ruleset.version})


urlpatterns = [path("", home), path("ruleset", ruleset)]
