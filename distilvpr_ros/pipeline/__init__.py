"""The keyframe → descriptor → map pipeline shared by the ROS nodes and the CLI (no rclpy here).

The ROS nodes (``distilvpr_ros.ros.mapping_node`` / ``localization_node``) only convert messages and call
this package; ``distilvpr build-map --bag`` calls :func:`~.offline.build_map_from_sequence`, which runs the
very same :class:`~.keyframes.Keyframer` and :class:`~.map_builder.MapBuilder`, so a map built offline from
a bag equals the map the mapping node builds live from the same data (up to which camera frame the live
synchroniser pairs).

Modules, one concept each
    * ``config``: :class:`NodeConfig`, one typed config for YAML files, ROS parameters and the CLI.
    * ``keyframes``: :class:`OdometryBuffer` (odometry interpolated to keyframe stamps) and :class:`Keyframer`.
    * ``embedder``: :class:`Embedder`, one network (torch or ONNX Runtime) from numpy inputs to one
      L2-normalised descriptor, with input validation.
    * ``map_builder``: :class:`MapBuilder`, teacher + student descriptors and the view of each keyframe into a
      :class:`~distilvpr_ros.mapping.database.PlaceDatabase`, plus teacher-space loop-closure candidates
      verified by LiDAR registration against the candidate's stored points.
    * ``localizer``: :class:`Localizer`, student descriptor → matcher over the map's student space → camera
      verification (PnP against the keyframe views): the metric pose with its covariance.
    * ``views``: what a keyframe stores for verification, and the verification inputs of stored keyframes
      (cached per keyframe id).
    * ``calibration``: the camera calibration from a world's ``world.json``, ``CameraInfo`` or the parameters.
    * ``offline``: build a map from a bag or sample sequence (``distilvpr build-map``); localize a sequence and
      score it (``localize_sequence``).
"""
