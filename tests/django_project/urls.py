from django.urls import path

from . import views

urlpatterns = [
    path("sync/<str:kind>/", views.sync_view),
    path("async/<str:kind>/", views.async_view),
    path("sync-fail/<str:kind>/", views.sync_fail_view),
    path("async-fail/<str:kind>/", views.async_fail_view),
    path("tasks/enqueue/<str:name>/", views.enqueue_view),
    path("tasks/aenqueue/<str:name>/", views.aenqueue_view),
]
