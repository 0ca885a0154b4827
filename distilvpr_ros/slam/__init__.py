"""SLAM back-end: a pose graph over odometry keyframes and verified loop closures (gtsam, robust kernels).

* :mod:`.loops`: the loop-closure record (``match_T_query`` + 6x6 covariance keyed by two stamps), input
  checks with reasons, JSON/CSV files;
* :mod:`.pose_graph`: :func:`~.pose_graph.optimize_pose_graph` and its config;
* :mod:`.synthetic`: right and planted wrong loops from ground truth (tests, benchmarks);
* :mod:`.offline`: the ``distilvpr pose-graph`` job (TUM/bag in; TUM, metrics and plots out);
* :mod:`.evaluate`: ``distilvpr slam-eval``, end to end on a world run with revisits and drifting odometry
  (map with the teacher and LiDAR-verified loops, pose graph, evo ATE before/after).

ROS-free; drifting odometry for the synthetic world is :mod:`distilvpr_ros.data.world.drift`, trajectory
metrics (evo) are :mod:`distilvpr_ros.evaluation.trajectory`.
"""
